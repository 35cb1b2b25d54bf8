"""The `meshcrypt` command line."""
