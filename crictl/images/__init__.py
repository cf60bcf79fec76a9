"""Driver: images. A registry client (distribution API v2) and the pull path that writes into
containerd's content store, image store and snapshotter the way containerd's own client does.

Imports neither store, api nor reconciler; uses the containerd driver.
"""
