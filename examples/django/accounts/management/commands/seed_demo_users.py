"""Creates the example's users (alice, bob, carol; password from --password) if missing."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the example users alice, bob and carol."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="demo-password")

    def handle(self, *args, **options):
        users = get_user_model()
        for name in ("alice", "bob", "carol"):
            user, created = users.objects.get_or_create(username=name)
            if created:
                user.set_password(options["password"])
                user.save()
        self.stdout.write("users: alice, bob, carol")
