#!/bin/sh
# log-shuttle -> logplex over HTTPS: each line on stdin becomes a message of the
# token's channel from process web.1. With no user in -logs-url, log-shuttle
# authenticates as token:<appname>. A server certificate from a private CA:
# export SSL_CERT_FILE=/path/to/ca.pem first.
# -num-outlets 1: log-shuttle's default of 4 outlets POSTs batches side by side,
# so they can arrive out of order; with one, lines keep their order.
#   ./web 2>&1 | sh log-shuttle.sh
exec log-shuttle -logs-url "https://@HOST@:@PORT@/logs" -appname @TOKEN@ -procid web.1 -num-outlets 1
