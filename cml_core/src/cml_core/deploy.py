"""Deployment API (``cml_core.deploy.Client``, ``Server``, ``save``, ``load_quantized``): see ``cml_core.fhe.deploy``."""

from .fhe.deploy import (
    Client,
    Server,
    ServerKeys,
    default_key_folder,
    key_id,
    load_quantized,
    read_manifest,
    save,
    versions,
)

__all__ = ["Client", "Server", "ServerKeys", "default_key_folder", "key_id", "load_quantized", "read_manifest", "save",
           "versions"]
