#!/bin/sh
# logger (util-linux) -> logplex over TCP: RFC 5424, octet-counted. One message
# per call, or one per line of stdin when no message is given:
#   sh logger.sh 'deploy finished'
#   ./job 2>&1 | sh logger.sh
exec logger --server @HOST@ --port @PORT@ --tcp --octet-count --rfc5424 --tag @TOKEN@ "$@"
