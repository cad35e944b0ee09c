"""`broker issuer`: OpenID/OAuth metadata, the JWKS and token status lists, from Vault."""
