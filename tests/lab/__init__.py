"""The lab (`meshcrypt lab`): unit tests of its pure parts, and labs brought up for real (integration)."""
