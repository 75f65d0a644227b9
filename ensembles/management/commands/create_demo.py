from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from ensembles import services


class Command(BaseCommand):
    help = "Create the heat-diffusion demo experiment for a user."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        experiment = services.demo_create(user=user)
        self.stdout.write(f"Created experiment {experiment.name!r} (id {experiment.pk}) for {username}.")
