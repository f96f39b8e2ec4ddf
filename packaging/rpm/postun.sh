# lbd %postun ($1: 0 erase, 1 upgrade): forget the unit; on upgrade restart
# a running lbd so it runs the new binary.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart lbd.service >/dev/null 2>&1 || :
    fi
fi
