"""Driver: the pod network (network namespaces via pyroute2, CNI plugins per the CNI spec).

Imports neither store, api nor reconciler.
"""
