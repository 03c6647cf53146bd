"""``make demo``: the whole of rolegate on this machine, from nothing (see :mod:`demo.run`)."""
