"""TLS (§19): contexts for the listeners (reloaded in place) and for https upstreams.
May import the foundation; the runtime and the forward client use it."""
