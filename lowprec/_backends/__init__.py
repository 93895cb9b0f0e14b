"""Backend loaders: importing a module here registers that backend's ops in lowprec.ops."""
