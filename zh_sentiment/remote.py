"""`zh-sentiment remote-check [NAME]`: whether the project's DVC remote answers, and if not, what to check, in one line.

`dvc push` and `dvc pull` report a failing S3 remote in a line or two quoting the S3 client, without the remote's
name, and a store that is down only after minutes of retries. This asks the remote once, without retries, with the
settings DVC itself reads (.dvc/config, .dvc/config.local, then the AWS variables or ~/.aws), and names the remote
and the setting to look at. It reads and writes nothing else: the cache and the workspace stay as they are.
"""

import argparse

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from zh_sentiment.errors import PipelineError, first_line

REFUSED_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zh-sentiment remote-check", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="the DVC remote (default: the project's default remote)")
    return parser.parse_args(argv)


def remote_settings(name: str | None) -> tuple[str, dict]:
    """The remote's name and its settings as DVC merges them (the project's config, then config.local)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        config = Repo(".").config
    except NotDvcRepoError:
        raise PipelineError("not in a DVC project: run this where dvc.yaml is.") from None
    name = name or config["core"].get("remote")
    if not name:
        raise PipelineError(
            "this project has no default DVC remote: add one with `dvc remote add -d storage s3://BUCKET/PATH` "
            '(README.md, "Share it with your team").'
        )
    if name not in config["remote"]:
        raise PipelineError(f"no DVC remote named '{name}': `dvc remote list` shows the project's remotes.")
    return name, dict(config["remote"][name])


def s3_client(settings: dict):
    """A client for the remote's store that tries once: a store that is down is said at once, not after retries."""
    session = botocore.session.get_session()
    if settings.get("profile"):
        session.set_config_variable("profile", settings["profile"])
    return session.create_client(
        "s3",
        endpoint_url=settings.get("endpointurl"),
        region_name=settings.get("region") or "us-east-1",
        aws_access_key_id=settings.get("access_key_id"),
        aws_secret_access_key=settings.get("secret_access_key"),
        aws_session_token=settings.get("session_token"),
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15),
    )


def problem(name: str, settings: dict, bucket: str, err: Exception) -> str:
    """What is wrong with the remote, and the setting to check."""
    if isinstance(err, EndpointConnectionError):
        return (
            f"cannot connect to {settings.get('endpointurl') or 'S3'}: is the store up, and is the address right? "
            f"(`dvc remote modify {name} endpointurl URL`)"
        )
    if isinstance(err, NoCredentialsError):
        return (
            f"no keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `dvc remote modify --local {name} "
            "access_key_id ...` and `secret_access_key ...`"
        )
    code = err.response.get("Error", {}).get("Code", "") if isinstance(err, ClientError) else ""
    if code in REFUSED_KEYS:
        return (
            f"the store refused the keys ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the "
            f"remote's access_key_id and secret_access_key (`dvc remote modify --local {name} ...`)"
        )
    if code == "NoSuchBucket":
        return (
            f"bucket '{bucket}' does not exist there: create it, or fix the url "
            f"(`dvc remote modify {name} url s3://BUCKET/PATH`)"
        )
    return f"the store answered: {first_line(err)}"


def check(name: str, settings: dict) -> str:
    """One line: the remote answers, or a PipelineError saying what to check."""
    url = settings["url"]
    where = f"remote '{name}' ({url}{' at ' + settings['endpointurl'] if settings.get('endpointurl') else ''})"
    if not url.startswith("s3://"):
        raise PipelineError(f"{where}: remote-check knows S3 remotes only; `dvc pull` says what fails for others.")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    try:
        s3_client(settings).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (BotoCoreError, ClientError) as err:
        raise PipelineError(f"{where}: {problem(name, settings, bucket, err)}") from None  # the gist is all there
    return f"{where}: answers, with these keys and this bucket"


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    print(check(*remote_settings(args.name)))
