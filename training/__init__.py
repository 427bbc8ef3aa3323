"""latentserve's offline trainer and evaluator (``python -m training --help``)."""
