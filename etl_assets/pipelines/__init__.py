"""Shipped table declarations (package data): ``demo.yaml`` declares the demo source."""
