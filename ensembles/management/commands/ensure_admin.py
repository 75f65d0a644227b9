"""Make sure an administrator account exists; print how to log in the first time."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an 'admin' superuser with a random password if no superuser exists."

    def handle(self, *args, **options):
        User = get_user_model()
        password_file = settings.DATA_DIR / "initial-admin-password.txt"
        if User.objects.filter(is_superuser=True).exists():
            if password_file.exists():
                self.stdout.write(f"Log in as 'admin' with the password in {password_file} (delete it once changed).")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", email="", password=password)
        # Readable by the server's account only from its first byte, and never printed:
        # logs are read by more people, and kept longer, than this file.
        password_file.unlink(missing_ok=True)
        with open(os.open(password_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w") as out:
            out.write(password + "\n")
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the administrator account 'admin'; its password is in {password_file} "
                "(change it in the admin, then delete that file)."
            )
        )
