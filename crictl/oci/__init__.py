"""Driver: OCI runtime specs built from CRI configs and image configs, as containerd's CRI
plugin builds them. Pure functions over dicts; imports neither store, api nor reconciler."""
