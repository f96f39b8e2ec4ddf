# lbd %post ($1: 1 install, 2 upgrade): make systemd see the unit. Not
# enabled on install: edit /etc/lbd/lbd.yaml, then systemctl enable --now lbd.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
