"""Driver: the pod network (network namespaces, CNI plugins executed per the CNI spec).

Imports neither store, api nor reconciler.
"""
