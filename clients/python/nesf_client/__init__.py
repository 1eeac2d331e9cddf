"""nesf_client: a Python client for nesfd, the Neural Structure Fields daemon.

    from nesf_client import Client
    c = Client("http://127.0.0.1:8080")
    structures = c.decode(latents)                 # pymatgen Structures
    latents = c.encode([structure, atoms, "x.cif"])

Standard library only; pymatgen or ASE are needed only to get their objects
back (as_="pymatgen", the default, or as_="ase").  The `nesf-client` command
is nesf_client.cli."""
from .client import Client, NesfError
from .transport import VERSION as __version__

__all__ = ["Client", "NesfError", "__version__"]
