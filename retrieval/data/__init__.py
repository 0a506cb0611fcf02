"""What every layer above reads: the captioned dataset folder format and where caches live."""
