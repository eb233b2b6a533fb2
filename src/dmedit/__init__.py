"""dmedit."""
