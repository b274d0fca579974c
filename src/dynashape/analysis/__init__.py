"""The graph under analysis: the model the rules see, shapes at any probe size, the lattice of
valid sizes and the export shape."""
