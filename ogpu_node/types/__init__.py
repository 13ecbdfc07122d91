"""Protocol data types and their codecs: signed consensus messages and their signing roots."""
