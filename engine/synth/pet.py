"""stub"""
TASK="pet"
