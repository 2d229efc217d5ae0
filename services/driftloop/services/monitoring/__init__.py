"""Monitoring: joins predictions with labels, tracks accuracy and concept drift, publishes drift events."""
