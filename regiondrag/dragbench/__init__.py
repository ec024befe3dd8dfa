"""DragBench-SR/DR, the benchmark of the paper: the data on disk (`reader`, through the safe
`unpickle`), its metrics (`metrics`: Mean Distance with DIFT, LPIPS), evaluation runs (`run`)
and their tables and plots (`report`), sweeps (`sweep`), many processes (`distributed`), and fetching
the data (`fetch`: `python -m regiondrag.dragbench.fetch`)."""
