"""The only package that imports hvac. Everything here translates hvac and connection
errors into the broker's own errors at the boundary (``translate_errors``)."""

from broker.vault._errors import translate_errors

__all__ = ["translate_errors"]
