"""The only package that imports py-evm: the VM, block execution, codecs, calls."""
