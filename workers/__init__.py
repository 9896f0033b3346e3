"""Worker entry points whose processes hold something long-lived: a DRMAA session, a Mesos
framework. The library never imports this package."""
