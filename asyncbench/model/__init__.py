"""Model zoo: real-weight import, model profiles, engine wrapping and INT8 calibration."""
