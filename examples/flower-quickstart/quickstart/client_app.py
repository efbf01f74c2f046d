"""quickstart: the ClientApp, one local update per round."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart.task import Net, load_data, train

app = ClientApp()


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    config = context.run_config
    loader = load_data(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        int(config["batch-size"]),
        float(config["fill-supplement"]),
    )
    loss = train(net, loader, int(config["local-epochs"]), float(msg.content["config"]["lr"]))
    labels = loader.dataset.tensors[1]
    metrics = {
        "train-loss": loss,
        "classes-trained-on": int(torch.unique(labels).numel()),
        "num-examples": len(labels),
    }
    reply = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)
