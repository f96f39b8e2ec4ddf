# lbd %preun ($1: 0 erase, 1 upgrade): on erase, stop lbd (it gives up the
# VIP on SIGTERM) and disable it.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop lbd.service >/dev/null 2>&1 || :
    fi
    systemctl --no-reload disable lbd.service >/dev/null 2>&1 || :
fi
