"""The sync gateway: devices replicate over HTTP with a token and never
hold database credentials; the server enforces each device's scope.

Built up in steps (see the README's "Deploying for devices" once it lands):
:mod:`replicator.gateway.tokens` signs and checks the devices' tokens. The
library below never imports this package.
"""
