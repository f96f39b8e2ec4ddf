//! VRRP state machine (RFC 5798 sec 6.4): pure, `(now, input) -> actions`.
