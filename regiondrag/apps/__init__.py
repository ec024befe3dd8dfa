"""The method's applications: the command line (`cli`), the browser editor (`ui`), the region file
(`region_file`: JSON and mask PNGs, with its caps), the preview drawing (`preview`), writing outputs
(`outputs`) and the speed benchmark (`benchmark`, with its diffusers `baseline` and `module_timing`). They use the method (regiondrag's top-level
modules); the method never imports them."""
