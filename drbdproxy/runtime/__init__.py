"""Process tuning for processes that relay bulk data: heap trimming and garbage-collector settings."""
