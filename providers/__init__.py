"""Provider clients: everything provider-specific lives in this package.

``providers.base`` defines the interface the pipeline sees; ``providers.http`` the
shared HTTP plumbing (``HttpClient``, retries, JSON answers); ``providers.auth`` the
bearer-token cache of the OAuth-style APIs (MTN MoMo, Orange Money); one module per
provider implements ``ProviderClient``; ``providers.sandbox`` is a local, in-memory
imitation of the providers' APIs.
"""
