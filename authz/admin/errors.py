"""The provisioning errors: what is wrong with a request, in words an operator can act on.

The admin API returns the message as the gRPC status message (:mod:`authz.admin.interceptor`
maps each class to its status code); it never repeats a secret.
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base class: the message is meant for the operator."""


class NotFound(ProvisioningError):
    pass


class AlreadyExists(ProvisioningError):
    pass


class InvalidArgument(ProvisioningError, ValueError):
    pass
