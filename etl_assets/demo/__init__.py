"""The demo source: an OLTP schema ``shop`` (generator and change simulator)."""
