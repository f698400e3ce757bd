"""The API playground: one self-contained page (``index.html`` here) that Envoy serves itself
at ``/playground`` when it is switched on (docs/PLAYGROUND.md). This package holds the page and
what the Envoy config needs of it: its path, its Content-Security-Policy, its catalogue."""
