"""Provider clients: everything provider-specific lives in this package.

``providers.base`` defines the interface the pipeline sees; ``providers.http`` the
shared HTTP plumbing; one module per provider implements ``ProviderClient``;
``providers.sandbox`` is a local, in-memory imitation of the providers' APIs.
"""
