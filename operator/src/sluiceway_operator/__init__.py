"""The sluiceway operator: turns a ``Pipeline`` custom resource into running fetchers and writers.

Only the package exists so far; its handlers, builders and scaling policy are the work of the
operator issue. It imports neither service package: it deploys their images.
"""
