"""The one package that calls cuda-python: checked calls, memory, streams, events, graphs, completion."""
