"""Subscriptions: be told when a new result covers an area (``/subscriptions``).

``store`` keeps subscriptions and pending deliveries in the results index, ``spec`` checks a
request, ``matching`` says whether a result concerns a subscription, ``webhooks`` holds the
outbound policy, handshake and signatures, ``delivery`` the hook and the delivery worker.
"""
