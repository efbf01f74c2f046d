"""ClientApp: one local update per round on this node's partition."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from regl.experiment import ExperimentSettings, new_model, train_client

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    config = msg.content["config"]
    settings = ExperimentSettings.from_config(dict(config))
    client_id = int(context.node_config["partition-id"])
    num_nodes = int(context.node_config["num-partitions"])
    if num_nodes != settings.partition.num_clients:
        raise ValueError(
            f"the run config asks for {settings.partition.num_clients} clients "
            f"but the federation has {num_nodes} nodes"
        )
    model = new_model(settings)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    metrics = train_client(settings, client_id, model, int(config["server-round"]))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
