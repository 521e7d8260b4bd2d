"""The demo: an OLTP source schema ``shop`` (generator and change simulator) and the first asset graph."""
