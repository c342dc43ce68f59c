"""PS Series group simulator used by the tests and the demo."""
