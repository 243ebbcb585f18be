"""Plain nn.Modules that only implement forward. Shapes come from the data config."""
