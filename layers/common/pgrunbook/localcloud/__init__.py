"""The local cloud: the AWS application of template.yaml run on this machine, for `pgrunbook local run`,
`pgrunbook demo` and the state-machine tests. Not shipped to Lambda (layers/common/layer-exclude.txt):
it needs the dev dependencies moto and cfn-lint, imported lazily.

- template.py: template.yaml read (cfn-lint's loader), state machine specs, handler files, intrinsics;
- cloud.py: the moto harness (`LocalCloud`): Step Functions executing the real ASL, the handlers of
  functions/*/app.py called in-process through one adapter, S3/SNS/Secrets Manager/... in moto;
- aslcheck.py: the static ASL checks shared with scripts/check_asl.py (`make lint`).
"""

from __future__ import annotations

from .aslcheck import asl_problems, placeholder_values, structure_problems, task_states
from .cloud import MOTO_MINOR, Execution, LambdaAdapter, LocalCloud, LocalDatabase, check_moto, local_cloud
from .template import (
    ACCOUNT,
    REGION,
    Handler,
    Intrinsics,
    LazyHandler,
    StateMachineSpec,
    function_ids,
    handler_path,
    load_handler,
    load_template,
    project_root,
    render_definition,
    state_machine_specs,
)

__all__ = [
    "ACCOUNT", "MOTO_MINOR", "REGION", "Execution", "Handler", "Intrinsics", "LambdaAdapter", "LazyHandler",
    "LocalCloud", "LocalDatabase", "StateMachineSpec", "asl_problems", "check_moto", "function_ids",
    "handler_path", "load_handler", "load_template", "local_cloud", "placeholder_values", "project_root",
    "render_definition", "state_machine_specs", "structure_problems", "task_states",
]
