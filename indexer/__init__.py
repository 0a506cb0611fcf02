"""The write path: scan photo folders, decode and encode them, and write the library."""
